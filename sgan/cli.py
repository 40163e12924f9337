"""Command line: ``sgan run CONFIG.yaml [key=value ...]`` and ``sgan <step> CONFIG.yaml [key=value ...]``.

The subcommands are the steps of the step table (sgan.pipeline.STEPS), in its order, so a new step
appears here without editing this file. The config file may be left out for steps that define
CONFIG_FILE (``sgan demo``) or when every needed key is given as an override.
``--overwrite`` and ``--resume`` are shorthands for ``overwrite=true`` and ``resume=true``; flags
and overrides may come in any order after the config file.
``sgan config CONFIG.yaml [key=value ...]`` prints the resolved config; ``sgan steps`` lists steps.
Errors in the config or the inputs, and an output that cannot be written (disk full, read-only),
print one message (exit status 2); SGAN_DEBUG=1 shows the trace.
A command that writes into the work dir holds its lock (sgan.utils.workdir): a second run there
is refused (exit status 2).
Ctrl-C prints the command that continues the run (exit status 130); so does SIGTERM (exit status
143), after a training step has written a checkpoint at its current iteration.
Multi-GPU: ``torchrun --nproc_per_node=N -m sgan.cli train-sgan CONFIG.yaml``.
"""
import argparse
import contextlib
import os
import shlex
import sys

import yaml

from sgan.utils.io import WriteError
from sgan.utils.signals import Terminated, sigterm_as_interrupt
from sgan.utils.workdir import locked_work_dir


def _split_config_and_overrides(items):
    """[CONFIG] [key=value ...] -> (config path or None, overrides)."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ValueError(f"expected CONFIG.yaml first, then key=value overrides; cannot read {bad}")
    return None, list(items)


def _first_doc_line(module):
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def build_parser(steps):
    """(parser, {command: its subparser}); steps: {name: step module}, in the table's order."""
    parser = argparse.ArgumentParser(prog="sgan", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text):
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                             help="the experiment's YAML file, then overrides such as train_cam.lr=1e-3")
        command.add_argument("--overwrite", action="store_true", help="redo finished work (overwrite=true)")
        command.add_argument("--resume", action="store_true",
                             help="continue interrupted training from its last checkpoint (resume=true)")
        return command

    commands = {"run": add("run", "run the steps listed in the config's `steps` in order"),
                "config": add("config", "print the resolved configuration (defaults <- file <- overrides) and exit")}
    sub.add_parser("steps", help="list the steps of the pipeline, in its order")
    for name, module in steps.items():
        commands[name] = add(name, _first_doc_line(module))
    return parser, commands


def parse_args(steps, argv):
    """argparse.Namespace(command, items, overwrite, resume); overrides may follow the flags
    (``config FILE --overwrite key=value``), which argparse leaves unparsed after an optional."""
    parser, commands = build_parser(steps)
    args, rest = parser.parse_known_args(argv)
    unparsed = [item for item in rest if item.startswith("-")] if hasattr(args, "items") else rest
    if unparsed:
        (commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unparsed)}")
    if rest:
        args.items = args.items + rest
    return args


def resume_command(argv, cfg):
    """The command line that continues an interrupted run (argv: without the program; cfg: the
    run's config, None when it was not read yet): ``--resume`` added and overwrite turned off,
    since it would discard the interrupted training's checkpoint."""
    kept = [item for item in argv if item not in ("--overwrite", "--resume")
            and not item.startswith(("overwrite=", "resume="))]
    if cfg is not None and cfg.overwrite:
        kept.append("overwrite=false")  # also when the config file sets it
    return shlex.join(["sgan", *kept, "--resume"])


def main(argv=None):
    """Run one command (argv: the arguments after the program name); returns the exit status."""
    with sigterm_as_interrupt():
        return _main(argv)


def _main(argv):
    from sgan.pipeline import STEPS, load_config, load_step, run_steps

    steps = {step.name: load_step(step) for step in STEPS}
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(steps, argv)
    if args.command == "steps":
        for name, module in steps.items():
            print(f"{name:16s} {_first_doc_line(module)}")
        return 0
    cfg = None
    try:
        path, overrides = _split_config_and_overrides(args.items)
        overrides += ["overwrite=true"] if args.overwrite else []
        overrides += ["resume=true"] if args.resume else []
        default_file = getattr(steps.get(args.command), "CONFIG_FILE", None)
        if path is None and default_file and os.path.isfile(default_file):
            path = default_file
        cfg = load_config(path, overrides)
        if args.command == "config":
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None), end="")
            return 0
        # no lock without a work dir: run_steps then says that work_dir is required
        with locked_work_dir(cfg.work_dir) if cfg.work_dir else contextlib.nullcontext():
            run_steps(cfg, None if args.command == "run" else [args.command])
        return 0
    except (ValueError, WriteError) as error:  # bad config or inputs, an unwritable output: SGAN_DEBUG=1 for the trace
        if os.environ.get("SGAN_DEBUG", "0") == "1":
            raise
        print(f"sgan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        status, what = 143, "terminated (SIGTERM)"
    except KeyboardInterrupt:
        status, what = 130, "interrupted"
    # reported here, after the interrupted frames are freed and their progress bars closed
    print(f"sgan: {what}; continue with: {resume_command(argv, cfg)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
