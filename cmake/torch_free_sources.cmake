# tiller_skip_pch_where_torch_is_unused(SOURCES...): marks the sources that never include LibTorch,
# directly or through the project's own headers, SKIP_PRECOMPILE_HEADERS. The precompiled header
# is <torch/torch.h>: every translation unit that is compiled with it instantiates and optimises
# some of LibTorch's inline code, about 7 CPU-seconds per file at -O3 even when the file uses no
# tensor (a JSON parser, the scaling fits, the report). Measured on rlhf/ground_truth.cpp: 16.5 s
# with the header, 8.3 s without; scaling/fit.cpp: 8.0 s and 1.4 s.
#
# The scan follows `#include "..."` lines resolved from the source tree's root and stops at the
# first `#include <torch/...>`, <ATen/...> or <c10/...>. A file so marked must include what it
# uses (nlohmann/json, <string>, ...) itself: it gets no precompiled header, and is compiled on its
# own in a unity build (TILLER_UNITY_BUILD).

function(_tiller_includes_torch file result_var)
  get_property(known GLOBAL PROPERTY "TILLER_TORCH_SCAN_${file}" SET)
  if(known)
    get_property(found GLOBAL PROPERTY "TILLER_TORCH_SCAN_${file}")
    set(${result_var} ${found} PARENT_SCOPE)
    return()
  endif()
  set_property(GLOBAL PROPERTY "TILLER_TORCH_SCAN_${file}" FALSE)  # a cycle reads as not found
  file(STRINGS "${file}" include_lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
  set(found FALSE)
  foreach(line IN LISTS include_lines)
    if(line MATCHES "<(torch|ATen|c10)/")
      set(found TRUE)
    elseif(line MATCHES "\"([^\"]+)\"")
      set(header "${CMAKE_CURRENT_SOURCE_DIR}/${CMAKE_MATCH_1}")
      if(EXISTS "${header}")  # generated headers (build tree) never include LibTorch
        _tiller_includes_torch("${header}" found)
      endif()
    endif()
    if(found)
      break()
    endif()
  endforeach()
  set_property(GLOBAL PROPERTY "TILLER_TORCH_SCAN_${file}" ${found})
  set(${result_var} ${found} PARENT_SCOPE)
endfunction()

function(tiller_skip_pch_where_torch_is_unused)
  set(torch_free "")
  foreach(source IN LISTS ARGN)
    _tiller_includes_torch("${source}" uses_torch)
    if(NOT uses_torch)
      list(APPEND torch_free "${source}")
    endif()
  endforeach()
  list(LENGTH torch_free count)
  message(STATUS "Tiller: ${count} sources never include LibTorch: compiled without its PCH")
  # Out of the unity batches too: a batch is compiled with the precompiled header.
  set_source_files_properties(${torch_free} PROPERTIES SKIP_PRECOMPILE_HEADERS ON
                              SKIP_UNITY_BUILD_INCLUSION ON)
endfunction()

# tiller_group_test_sources_for_unity(): the unity units of the tests, fixed by the whole suite.
# Every test source that includes LibTorch gets a UNITY_GROUP: batches of
# CMAKE_UNITY_BUILD_BATCH_SIZE (8) in the whole suite's file order, tests/test_util.cpp last. A build of some of the tests (CI's --subset against
# LibTorch 2.x, the sanitizer build) then puts into one unit only files that share one in the
# whole suite, so the one set of file-local names the whole suite's build checks serves them all.
# Targets that compile tests set UNITY_BUILD_MODE GROUP.
function(tiller_group_test_sources_for_unity)
  if(NOT CMAKE_UNITY_BUILD)
    return()
  endif()
  file(GLOB suite CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/tests/*_test.cpp)
  list(SORT suite)
  list(APPEND suite ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_util.cpp)
  set(index 0)
  foreach(source IN LISTS suite)
    _tiller_includes_torch("${source}" uses_torch)
    if(uses_torch)
      math(EXPR group "${index} / ${CMAKE_UNITY_BUILD_BATCH_SIZE}")
      set_source_files_properties(${source} PROPERTIES UNITY_GROUP "tests_${group}")
      math(EXPR index "${index} + 1")
    endif()
  endforeach()
endfunction()
