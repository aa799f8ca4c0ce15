# The cargo command lines of the qis binary, as CMake lists (one element per argument).
#
# qis_cargo_command(<out> <cargo> <subcommand> <features> <target_dir> [extra args...])
# sets <out> to `<cargo> <subcommand> [--features <features>] --target-dir <target_dir>
# [extra args...]`. `--features` is left out when <features> is empty: cargo refuses
# `--features ""`. A CMake list of features (`r2r;foo`) is joined with commas.
function(qis_cargo_command out cargo subcommand features target_dir)
  string(REPLACE ";" "," features "${features}")
  string(STRIP "${features}" features)
  set(cmd "${cargo}" ${subcommand})
  if(NOT features STREQUAL "")
    list(APPEND cmd --features "${features}")
  endif()
  list(APPEND cmd --target-dir "${target_dir}" ${ARGN})
  set(${out} ${cmd} PARENT_SCOPE)
endfunction()
