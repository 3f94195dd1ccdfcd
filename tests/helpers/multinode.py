"""Start a two-node local Ray cluster (one node with a logical GPU), run sweeps on it with
``--address``, shut it down, and print the process ids it started as JSON."""
import json
import sys

from ray.cluster_utils import Cluster


def main(spread_cfg: str, gpu_cfg: str, storage: str) -> int:
    mem = 150 * 1024**2
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": mem})
    worker = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=mem)
    pids = [info.process.pid for node in (cluster.head_node, worker)
            for infos in node.all_processes.values() for info in infos if info.process is not None]
    codes = []
    try:
        cluster.wait_for_nodes()
        from sweeps.cli import main as cli

        for cfg, name in ((spread_cfg, "spread"), (gpu_cfg, "gpu")):
            codes.append(cli(["run", cfg, "--storage", storage, "--name", name, "--address", cluster.address]))
        worker_id = worker.node_id
    finally:
        cluster.shutdown()
    print("RESULT " + json.dumps({"codes": codes, "pids": pids, "gpu_node": worker_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
