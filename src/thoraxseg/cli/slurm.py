"""``thoraxseg slurm train``: write (and optionally submit) an sbatch script for ``thoraxseg train``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thoraxseg.cli.train import add_train_arguments, train_setting_actions


def train_argv(args: argparse.Namespace, device: str) -> list[str]:
    """Re-create the ``thoraxseg train`` arguments (absolute paths) from parsed options."""
    argv = ["--model", args.model, "--data", str(args.data.expanduser().resolve()),
            "--out", str(args.out.expanduser().resolve()), "--device", device]
    if args.config is not None:
        argv += ["--config", str(args.config.expanduser().resolve())]
    for action in train_setting_actions():  # every setting option of `thoraxseg train`, as given
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # store_true / store_false: the flag itself
            if value != action.default:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    for key, value in args.settings:
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def run(args: argparse.Namespace) -> int:
    from thoraxseg.training.slurm import SlurmSpec, sbatch_script, submit, write_script

    spec = SlurmSpec(partition=args.partition, gpus=args.gpus, time=args.time, nodes=args.nodes,
                     cpus_per_gpu=args.cpus_per_gpu, mem=args.mem, account=args.account, qos=args.qos,
                     job_name=args.job_name, port=args.port, setup=tuple(args.setup))
    device = args.device or ("cuda" if args.gpus > 0 else "cpu")
    from thoraxseg.arms import get_arm

    if args.workers_default and args.num_workers is None and "num_workers" in get_arm(args.model).train_flags:
        args.num_workers = max(spec.cpus_per_gpu - 1, 0)
    text = sbatch_script(train_argv(args, device), spec, model=args.model, out=args.out)
    script = args.script or (args.out / "slurm_train.sbatch")
    write_script(text, script)
    print(f"wrote {script}")
    if args.submit:
        job = submit(script)
        print(f"submitted job {job}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("slurm", help="run thoraxseg jobs on a SLURM cluster",
                              description="Write (and with --submit, submit) SLURM batch scripts.")
    sub = p.add_subparsers(dest="slurm_command", metavar="JOB")
    sub.required = True
    t = sub.add_parser(
        "train", help="sbatch script for `thoraxseg train` (torchrun, DDP over nodes × GPUs)",
        description="Takes every `thoraxseg train` option plus the SLURM resources; writes RUN/slurm_train.sbatch "
                    "(or --script). The job resumes from RUN/last.pt, so it can be requeued or resubmitted.",
    )
    add_train_arguments(t)
    t.set_defaults(device=None)
    s = t.add_argument_group("SLURM")
    s.add_argument("--partition", required=True, help="SLURM partition")
    s.add_argument("--gpus", type=int, default=1, help="GPUs per node = torchrun processes per node (default 1)")
    s.add_argument("--time", default="24:00:00", help="wall-clock limit, e.g. 12:00:00 (default 24:00:00)")
    s.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    s.add_argument("--cpus-per-gpu", type=int, default=8, help="CPU cores per GPU process (default 8)")
    s.add_argument("--mem", help="memory per node, e.g. 64G")
    s.add_argument("--account", help="SLURM account")
    s.add_argument("--qos", help="SLURM quality of service")
    s.add_argument("--job-name", help="job name (default thoraxseg-<model>)")
    s.add_argument("--port", type=int, default=29500, help="torchrun rendezvous port on the first node")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line to run first, e.g. 'source /path/.venv/bin/activate' (repeatable)")
    s.add_argument("--no-default-workers", dest="workers_default", action="store_false",
                   help="do not set --loader-workers to cpus-per-gpu - 1 for the 2D arms")
    s.add_argument("--script", type=Path, help="where to write the script (default RUN/slurm_train.sbatch)")
    s.add_argument("--submit", action="store_true", help="submit with sbatch after writing")
    t.set_defaults(func=run)
