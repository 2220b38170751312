# The dependency order of common/'s folders (docs/design.md, "Dependency order of common/"): a file
# in one folder may include only its own folder and the folders before it. Run by CTest as
#   cmake -DSOURCE_DIR=<repository root> -P cmake/check_layers.cmake
# and fails with one line per include that goes against the order.

set(TILLER_LAYERS util dist model tokenizer data io recipe train rollout)

if(NOT SOURCE_DIR)
  message(FATAL_ERROR "check_layers: pass -DSOURCE_DIR=<repository root>")
endif()
list(JOIN TILLER_LAYERS " -> " order_text)

file(GLOB folders LIST_DIRECTORIES true RELATIVE "${SOURCE_DIR}/common" "${SOURCE_DIR}/common/*")
set(violation_count 0)
# One line per violation, on stderr as written (message(NOTICE) neither indents nor wraps).
macro(report_violation text)
  message(NOTICE "${text}")
  math(EXPR violation_count "${violation_count} + 1")
endmacro()
foreach(folder IN LISTS folders)
  if(NOT IS_DIRECTORY "${SOURCE_DIR}/common/${folder}")
    continue()
  endif()
  list(FIND TILLER_LAYERS "${folder}" folder_rank)
  if(folder_rank EQUAL -1)
    report_violation("common/${folder}/ is not in the dependency order (add it to TILLER_LAYERS \
in cmake/check_layers.cmake and to docs/design.md); order: ${order_text}")
    continue()
  endif()
  file(GLOB_RECURSE sources RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/common/${folder}/*.h"
       "${SOURCE_DIR}/common/${folder}/*.cpp")
  foreach(source IN LISTS sources)
    file(STRINGS "${SOURCE_DIR}/${source}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"common/")
    foreach(line IN LISTS includes)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"(common/[^\"]*)\".*" "\\1" included "${line}")
      if(NOT included MATCHES "^common/([^/\"]+)/")
        continue()  # common/pch.h, common/torch_compat.h: below every folder
      endif()
      set(target "${CMAKE_MATCH_1}")
      list(FIND TILLER_LAYERS "${target}" target_rank)
      if(target_rank GREATER folder_rank)
        report_violation("${source} includes ${included}: ${folder} may not depend on ${target}; \
order: ${order_text}")
      elseif(target_rank EQUAL -1)
        report_violation("${source} includes ${included}: common/${target}/ is not in the \
dependency order; order: ${order_text}")
      endif()
    endforeach()
  endforeach()
endforeach()

if(violation_count GREATER 0)
  message(FATAL_ERROR "${violation_count} include(s) in common/ go against the dependency order \
(docs/design.md, \"Dependency order of common/\")")
endif()
message(STATUS "common/ follows the dependency order: ${order_text}")
