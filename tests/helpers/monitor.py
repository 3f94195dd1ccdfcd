"""Run ``prunesweep run ARGS...`` in this process (a local Ray with its dashboard, as a user starts
it) while a thread watches the sweep the way the dashboard does: Ray's state API (actors, tasks) and
the node's Prometheus metrics endpoint. Prints ``RESULT {json}``: the exit code, the actors' names
(``repr``), the tasks' names, the ``ray_prunesweep_*`` samples last seen and the process ids the
local Ray ran."""
import json
import sys
import threading
import time
import urllib.request


def _samples(text: str) -> dict:
    """``{metric line without its value: value}`` of the prunesweep metrics in a Prometheus scrape."""
    out = {}
    for line in text.splitlines():
        if line.startswith("ray_prunesweep_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def watch(seen: dict, stop: threading.Event) -> None:
    # Ray imported here only once the sweep has (it decides its token authentication before)
    while not stop.is_set() and not getattr(sys.modules.get("ray"), "is_initialized", lambda: False)():
        time.sleep(0.1)
    import ray
    from ray.util.state import list_actors, list_tasks
    from tests.conftest import ray_pids

    seen["pids"] = ray_pids()  # the local Ray's daemons, for the test to end whatever outlives the sweep
    # asked once: after the sweep's ray.shutdown() a call such as ray.nodes() would start another Ray
    port = ray.nodes()[0]["MetricsExportPort"]
    from ray._private import worker

    address = f"http://{worker._global_node.webui_url}"  # this sweep's dashboard, whatever else runs here
    while not stop.is_set():
        try:
            for actor in list_actors(address=address, detail=True, limit=1000, timeout=5):
                if actor.repr_name:
                    seen["actors"].add(actor.repr_name)
            seen["tasks"].update(t.name for t in list_tasks(address=address, limit=1000, timeout=5))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                seen["metrics"].update(_samples(answer.read().decode()))
        except Exception as exc:  # the dashboard still starting, Ray shutting down
            seen["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        time.sleep(1.0)


def main(argv: list[str]) -> int:
    from sweeps.cli import main as cli

    seen = {"actors": set(), "tasks": set(), "metrics": {}, "errors": [], "pids": []}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(seen, stop), daemon=True)
    watcher.start()
    code = cli(argv)
    stop.set()
    watcher.join()  # its calls time out within seconds once Ray is gone
    print("RESULT " + json.dumps({"code": code, "actors": sorted(seen["actors"]), "tasks": sorted(seen["tasks"]),
                                  "metrics": seen["metrics"], "errors": seen["errors"][-5:], "pids": seen["pids"]}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
