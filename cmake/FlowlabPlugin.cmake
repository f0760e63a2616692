# flowlab_add_plugin(NAME [SOURCES] src... [OUTPUT_DIRECTORY dir] [INSTALL_DESTINATION dir] [NO_INSTALL])
#
# Builds a flowlab plugin: a MODULE library named libflowlab_<NAME>.so, linked against
# flowlab::core, compiled as C++20 with hidden visibility (only the entry point that
# FLOWLAB_PLUGIN declares is exported) and FLOWLAB_PLUGIN_NAME="<NAME>" defined. The target is
# flowlab_plugin_<NAME>, for target_link_libraries/target_compile_options on top.
#
# The same function serves flowlab's own tree and plugins built against an installed flowlab
# (find_package(flowlab CONFIG REQUIRED) brings it in):
#   - in flowlab's tree the library lands in the build's plugin directory (where bin/flowlab
#     looks) and installs to <prefix>/lib/flowlab/plugins next to the standard plugins;
#   - out of tree it lands in the current build directory (OUTPUT_DIRECTORY overrides) and
#     `cmake --install` puts it in <your prefix>/lib/flowlab/plugins (INSTALL_DESTINATION
#     overrides, NO_INSTALL skips it). An installed flowlab finds plugins by name in its own
#     lib/flowlab/plugins, in --plugin-dir directories and in $FLOWLAB_PLUGIN_PATH.
#
# Minimal out-of-tree CMakeLists.txt:
#   cmake_minimum_required(VERSION 3.25)
#   project(my_layers LANGUAGES CXX)
#   find_package(flowlab CONFIG REQUIRED)
#   flowlab_add_plugin(my_layers my_layers.cpp)
include_guard(GLOBAL)
include(GNUInstallDirs)

function(flowlab_add_plugin name)
  cmake_parse_arguments(ARG "NO_INSTALL" "OUTPUT_DIRECTORY;INSTALL_DESTINATION" "SOURCES" ${ARGN})
  set(sources ${ARG_SOURCES} ${ARG_UNPARSED_ARGUMENTS})
  if(NOT name MATCHES "^[A-Za-z0-9_]+$")
    message(FATAL_ERROR "flowlab_add_plugin: plugin name '${name}' must be letters, digits and '_' "
                        "(it becomes libflowlab_${name}.so and the name configs use)")
  endif()
  if(NOT sources)
    message(FATAL_ERROR "flowlab_add_plugin(${name}): no source files given")
  endif()
  if(NOT TARGET flowlab::core)
    message(FATAL_ERROR "flowlab_add_plugin(${name}): target flowlab::core not found; "
                        "call find_package(flowlab CONFIG REQUIRED) first")
  endif()

  set(target flowlab_plugin_${name})
  add_library(${target} MODULE ${sources})
  # flowlab::core carries the include directories, C++20 and Threads.
  target_link_libraries(${target} PRIVATE flowlab::core)
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME flowlab_${name}
    PREFIX lib
    SUFFIX .so
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_definitions(${target} PRIVATE FLOWLAB_PLUGIN_NAME="${name}")

  # Where the library lands in the build tree.
  if(ARG_OUTPUT_DIRECTORY)
    set(out_dir ${ARG_OUTPUT_DIRECTORY})
  elseif(DEFINED FLOWLAB_PLUGIN_OUTPUT_DIR)
    set(out_dir ${FLOWLAB_PLUGIN_OUTPUT_DIR})       # flowlab's own tree
  else()
    set(out_dir ${CMAKE_CURRENT_BINARY_DIR})
  endif()
  set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${out_dir})

  if(ARG_NO_INSTALL)
    return()
  endif()
  if(ARG_INSTALL_DESTINATION)
    set(dest ${ARG_INSTALL_DESTINATION})
  elseif(DEFINED FLOWLAB_PLUGIN_INSTALL_DIR)
    set(dest ${FLOWLAB_PLUGIN_INSTALL_DIR})
  else()
    set(dest ${CMAKE_INSTALL_LIBDIR}/flowlab/plugins)
  endif()
  get_target_property(core_imported flowlab::core IMPORTED)
  if(NOT core_imported)
    # In flowlab's tree: <libdir>/flowlab/plugins -> <libdir>, where libflowlab.so installs.
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "$ORIGIN/../..")
  else()
    # Against an installed flowlab: keep the path to its libflowlab.so, wherever that is.
    set_target_properties(${target} PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
  endif()
  install(TARGETS ${target} LIBRARY DESTINATION ${dest})
endfunction()

# A plugin only loads into a flowlab built by the same compiler family and major version (C++
# types cross the boundary); the loader refuses a mismatch at run time, this says it at
# configure time already. FLOWLAB_CXX_COMPILER_* are set by flowlabConfig.cmake.
if(DEFINED FLOWLAB_CXX_COMPILER_ID AND DEFINED CMAKE_CXX_COMPILER_ID)
  string(REGEX MATCH "^[0-9]+" _flowlab_their_major "${FLOWLAB_CXX_COMPILER_VERSION}")
  string(REGEX MATCH "^[0-9]+" _flowlab_our_major "${CMAKE_CXX_COMPILER_VERSION}")
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL FLOWLAB_CXX_COMPILER_ID OR
     NOT _flowlab_their_major STREQUAL _flowlab_our_major)
    message(WARNING "flowlab was built with ${FLOWLAB_CXX_COMPILER_ID} ${FLOWLAB_CXX_COMPILER_VERSION}, this "
                    "project uses ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}: flowlab will refuse "
                    "to load plugins built here (set CMAKE_CXX_COMPILER to flowlab's compiler)")
  endif()
  unset(_flowlab_their_major)
  unset(_flowlab_our_major)
endif()
