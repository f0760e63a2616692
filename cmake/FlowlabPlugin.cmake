# flowlab_add_plugin(NAME SOURCES...): builds a flowlab plugin library.
#
# A MODULE library named libflowlab_<NAME>.so with hidden visibility (only the entry point that
# FLOWLAB_PLUGIN exports is visible), linked against flowlab::core. Inside flowlab's own tree the
# plugin lands in the build's plugin directory, where bin/flowlab finds it.
function(flowlab_add_plugin name)
  cmake_parse_arguments(ARG "NO_INSTALL" "" "SOURCES" ${ARGN})
  set(sources ${ARG_SOURCES} ${ARG_UNPARSED_ARGUMENTS})
  set(target flowlab_plugin_${name})
  add_library(${target} MODULE ${sources})
  target_link_libraries(${target} PRIVATE flowlab::core)
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME flowlab_${name}
    PREFIX lib
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_definitions(${target} PRIVATE FLOWLAB_PLUGIN_NAME="${name}")
  if(DEFINED FLOWLAB_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${FLOWLAB_PLUGIN_OUTPUT_DIR})
  endif()
  if(NOT ARG_NO_INSTALL AND DEFINED FLOWLAB_PLUGIN_INSTALL_DIR)
    install(TARGETS ${target} LIBRARY DESTINATION ${FLOWLAB_PLUGIN_INSTALL_DIR})
  endif()
endfunction()
