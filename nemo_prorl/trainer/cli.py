"""``nemo-prorl train [--config-name NAME] [key=value ...]`` (also ``python examples/train_prorl.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from nemo_prorl.config_schema import ConfigError


def _close_progress_bar(trainer) -> None:
    """Close the trainer's progress bar (if any) so that what is printed next starts on a clean line."""
    bar = getattr(trainer, "progress_bar", None)
    if bar is not None:
        bar.close()
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    """Run training; returns the exit code.

    0: trained to ``trainer.max_steps``; 1: training aborted; 2: bad config or data; 3: stopped by a
    preemption signal after a complete checkpoint (re-run the same command to resume; under Slurm rank 0
    has asked for a requeue).
    """
    ap = argparse.ArgumentParser(
        prog="nemo-prorl train",
        description="ProRL training. With no --config-name it runs the embedded default (tiny CPU demo).",
        epilog="Overrides are Hydra-style key=value, e.g. trainer.max_steps=20 "
               "policy.tensor_model_parallel_size=2 reset.at_steps=[10]",
    )
    ap.add_argument("--config-name", "-cn", default=None,
                    help="recipe name in the package's nemo_prorl/conf/ or in --config-path (default: demo)")
    ap.add_argument("--config-path", "-cp", default=None,
                    help="directory of your own configs (default: the package's nemo_prorl/conf/)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate the recipe (every phase), print its schedule and a per-rank memory plan, "
                         "and exit without building a model, training or writing anything; reads only the "
                         "model's config.json (or a built-in table for known model names)")
    ap.add_argument("--cfg", "-c", choices=["job"], default=None,
                    help="print the composed config (recipe + overrides + every default, as YAML; each "
                         "section checked, the model not read) and exit without training, like Hydra's "
                         "--cfg job; docs/config.md describes every key")
    ap.add_argument("--world-size", type=int, default=None,
                    help="--dry-run: ranks of the job (default: WORLD_SIZE / SLURM_NTASKS, else 1)")
    ap.add_argument("--gpu-memory-gb", type=float, default=80.0, help="--dry-run: GPU memory (default 80)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    args = ap.parse_intermixed_args(argv)  # options and key=value overrides in any order

    from nemo_prorl.trainer.config import build_config, compose, load_config, parse_config

    try:
        if args.cfg == "job":
            from omegaconf import OmegaConf

            cfg = parse_config(compose(args.config_name, args.overrides, args.config_path))
            print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
            return 0
        if args.dry_run:
            return _dry_run(build_config(compose(args.config_name, args.overrides, args.config_path),
                                         require_model=False), args)
        cfg = load_config(args.config_name, args.overrides, args.config_path)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"nemo-prorl train: invalid config: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Hydra's own override/compose errors
        print(f"nemo-prorl train: cannot compose config: {exc}", file=sys.stderr)
        return 2

    from nemo_prorl.algorithms.dynamic_sampling import DynamicSamplingExhausted
    from nemo_prorl.data.preflight import DataValidationError
    from nemo_prorl.trainer.trainer import ProRLTrainer, TrainingError

    t0 = time.time()
    trainer = ProRLTrainer(cfg)
    failed = True
    try:
        trainer.setup()
        summary = trainer.fit()
        failed = False
    except (DataValidationError, ConfigError) as exc:
        _close_progress_bar(trainer)
        print(f"nemo-prorl train: {exc}", file=sys.stderr)
        return 2
    except (TrainingError, DynamicSamplingExhausted) as exc:
        _close_progress_bar(trainer)  # first: a live bar redraws itself over the message
        print(f"nemo-prorl train: aborted: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close(failed=failed)
    if getattr(trainer, "logger", None) is not None or trainer.step:
        from nemo_prorl.trainer.trainer import _rank

        if _rank() == 0:
            run = cfg.run_dir
            print(json.dumps({k: v for k, v in summary.items() if k != "passk"}, default=str))
            print(f"\ndone in {time.time() - t0:.0f}s: {summary['steps']} steps, "
                  f"{len(summary['resets'])} reset(s)")
            print(f"  run directory: {run}")
            print(f"  metrics:       {run}/metrics.jsonl (TensorBoard: {run}/tensorboard)")
            print(f"  plots:         {run}/plots/")
            if "hf_export" in summary:
                print(f"  final policy:  {summary['hf_export']} (HF format)")
            if "reward_first5" in summary:
                first, last = summary["reward_first5"], summary["reward_last5"]
                print(f"  train reward:  {first:.3f} (all samples, first 5 steps) -> {last:.3f} (last 5)")
            if "passk" in summary:
                curves = summary["passk"]["curves"]
                ks = sorted(int(k.split("@")[1]) for k in curves["final"]
                            if k.startswith("pass@") and "/" not in k)
                for label in ("base", "final"):
                    if label in curves:
                        print(f"  pass@k {label:5s}: "
                              + "  ".join(f"@{k}={curves[label][f'pass@{k}']:.3f}" for k in ks))
                from nemo_prorl.eval.passk import groups_in

                for group in groups_in(curves["final"]):  # rows with a difficulty group: one line each
                    for label in ("base", "final"):
                        vals = [curves.get(label, {}).get(f"pass@{k}/group:{group}") for k in ks]
                        if all(v is not None for v in vals):
                            print(f"  pass@k {label:5s} [{group}]: "
                                  + "  ".join(f"@{k}={v:.3f}" for k, v in zip(ks, vals)))
                print(f"  pass@k:        {run}/passk.json, {run}/plots/passk.png")
            if summary.get("preempted"):
                print(f"  preempted:     checkpoint saved; re-run the same command to resume"
                      f"{' (Slurm requeue requested)' if summary.get('requeued') else ''}")
    return 3 if summary.get("preempted") else 0


def _dry_run(cfg, args) -> int:
    """Print the dry-run report (exit 0), or the first impossible setting (exit 2)."""
    from nemo_prorl.trainer.dry_run import dry_run_report
    from nemo_prorl.trainer.preflight import world_size_from_env

    world = args.world_size if args.world_size is not None else (world_size_from_env() or 1)
    if world < 1 or args.gpu_memory_gb <= 0:
        print("nemo-prorl train: --world-size must be >= 1 and --gpu-memory-gb > 0", file=sys.stderr)
        return 2
    try:
        report = dry_run_report(cfg, world_size=world, gpu_memory_gb=args.gpu_memory_gb,
                                config_name=args.config_name)
    except ConfigError as exc:
        print(f"nemo-prorl train: invalid config: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0
