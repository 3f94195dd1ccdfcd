"""sweeps: Ray Tune orchestration of train-prune-train trials driven by YAML configs."""
