"""What the independent ROS 2 clients of test/interop.rs (test/interop_ros.py,
test/interop_client.py) share: the check counter that ends the process at the first
failed check, a Zenoh client session on the test's router, and the entry point that
ends the process whatever Zenoh's threads do. The scripts put their own folder (test/)
first on sys.path to import it, wherever they are run from.
"""
import json
import os
import sys

import zenoh


class Check:
    def __init__(self):
        self.count = 0

    def __call__(self, what, ok, got=None):
        self.count += 1
        if not ok:
            print(f"FAILED: {what} (got {got!r})", file=sys.stderr)
            sys.stderr.flush()
            # Zenoh's threads would keep the interpreter alive after SystemExit.
            os._exit(1)


check = Check()


def client_session(router):
    """A Zenoh client session connected to `router` only (no multicast scouting)."""
    conf = zenoh.Config()
    conf.insert_json5("mode", '"client"')
    conf.insert_json5("connect/endpoints", json.dumps([router]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    return zenoh.open(conf)


def run(main):
    """Runs `main`, then ends the process: status 0 when it returned, 1 on any failure."""
    try:
        main()
    except BaseException:  # noqa: BLE001 - any failure must end the process
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)
