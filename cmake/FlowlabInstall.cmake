# Installation and the CMake package: `cmake --install build --prefix P` puts
#   P/bin/flowlab                             (RPATH $ORIGIN/../lib: finds libflowlab.so)
#   P/lib/libflowlab.so*                      (target flowlab::core)
#   P/lib/flowlab/plugins/libflowlab_*.so     (the plugins flowlab ships)
#   P/include/flowlab/*.hpp, ops/*.hpp         (public headers, version.hpp included)
#   P/lib/cmake/flowlab/                      (flowlabConfig.cmake, its version file, the
#                                              exported targets and FlowlabPlugin.cmake)
#   P/share/doc/flowlab/                      (the plugin guide and the embedding guide)
#   P/share/flowlab/examples/NAME/            (the example plugins' sources and configs)
# so that a plugin project needs only find_package(flowlab CONFIG REQUIRED) and
# flowlab_add_plugin(). Included at the end of the top-level CMakeLists.txt, after every
# target exists.
include_guard(GLOBAL)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(FLOWLAB_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/flowlab CACHE STRING
    "Where flowlab's CMake package files install (relative to the prefix)")

# Users see flowlab::core, not flowlab::flowlab_core.
set_target_properties(flowlab_core PROPERTIES EXPORT_NAME core)

# The core links oneDNN, TBB, OpenMP, libpng, zlib and nlohmann/json privately: none of them
# appears in the exported interface, only Threads (public).
install(TARGETS flowlab_core EXPORT flowlabTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})

file(GLOB FLOWLAB_PUBLIC_HEADERS ${PROJECT_SOURCE_DIR}/core/include/flowlab/*.hpp)
get_target_property(_flowlab_core_bin flowlab_core BINARY_DIR)
install(FILES ${FLOWLAB_PUBLIC_HEADERS} ${_flowlab_core_bin}/include/flowlab/version.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/flowlab)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/flowlab/ops
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/flowlab FILES_MATCHING PATTERN "*.hpp")
unset(_flowlab_core_bin)

install(EXPORT flowlabTargets NAMESPACE flowlab:: FILE flowlabTargets.cmake
        DESTINATION ${FLOWLAB_INSTALL_CMAKEDIR})

# The example plugins, for whoever has only the installed package: each folder is a plugin
# project that builds against it as it stands (the guide reads them alongside).
set(FLOWLAB_INSTALL_EXAMPLESDIR ${CMAKE_INSTALL_DATADIR}/flowlab/examples)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/plugins/examples/ DESTINATION ${FLOWLAB_INSTALL_EXAMPLESDIR}
        FILES_MATCHING PATTERN "*.cpp" PATTERN "*.hpp" PATTERN "*.json" PATTERN "CMakeLists.txt")

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/flowlabConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/flowlabConfig.cmake
  INSTALL_DESTINATION ${FLOWLAB_INSTALL_CMAKEDIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR FLOWLAB_INSTALL_EXAMPLESDIR)
# The plugin loader accepts a plugin built for the same major.minor only, so the package
# matches the same way: find_package(flowlab 0.1) accepts 0.1.x and nothing else.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/flowlabConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)

install(FILES ${PROJECT_BINARY_DIR}/cmake/flowlabConfig.cmake
              ${PROJECT_BINARY_DIR}/cmake/flowlabConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FlowlabPlugin.cmake
        DESTINATION ${FLOWLAB_INSTALL_CMAKEDIR})

if(EXISTS ${PROJECT_SOURCE_DIR}/docs/WRITING_A_PLUGIN.md)
  install(FILES ${PROJECT_SOURCE_DIR}/docs/WRITING_A_PLUGIN.md ${PROJECT_SOURCE_DIR}/docs/EMBEDDING.md
          DESTINATION ${CMAKE_INSTALL_DOCDIR})
endif()
