"""A sweep's listening page, rebuilt from Tune's storage and served on 127.0.0.1.

    python -m sweep.report beta_dim-smoke-20261130-061502               # ./sweep-results; http://127.0.0.1:8000
    python -m sweep.report NAME --storage /shared/sweep-results --port 8010
    python -m sweep.report NAME --no-serve                               # write the page, print where

The page (sweep/listening.py) is written at the end of every sweep and logged on its parent run;
this command rebuilds it from what the trials left in Tune's storage (their reports and WAVs), with
the summary's plots, without MLflow: for a sweep that ended before the page existed, one whose
MLflow is away, or to read it from another machine over an SSH tunnel to the port.
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sweep import storage
from sweep.errors import UsageError, report_usage_error
from sweep.listening import PAGE_FILE, write_listening_page
from sweep.plan import SweepPlan
from sweep.summary import results_frame, write_plots
from sweep.sync import stored_plan, stored_trials


def build_page(plan: SweepPlan) -> Path:
    """The sweep's listening page (and the summary's plots) from Tune's storage; its path."""
    if storage.is_uri(plan.storage):
        raise UsageError(
            f"{plan.storage} is an object store: copy the experiment folder to a local disk first "
            "and pass --storage that folder."
        )
    nothing = UsageError(f"{plan.experiment} has no completed trial with rollout audio yet: nothing to hear.")
    frame = results_frame(stored_trials(Path(plan.experiment_dir)), plan.varied, plan.preset, plan.seed,
                          fixed=plan.fixed)  # fmt: skip
    if frame.empty:
        raise nothing
    plots = write_plots(frame, plan.summary_dir)
    page = write_listening_page(frame, plan.experiment_dir, plan.summary_dir, plan.experiment, plots)
    if page is None:
        raise nothing
    return page


def serve(folder: Path, port: int) -> None:
    """Serve `folder` on 127.0.0.1:port until Ctrl-C (loopback only: the page is the sweep's data)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_port}/{PAGE_FILE}  (Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="the sweep's experiment name")
    p.add_argument("--storage", default="sweep-results", help="Tune results folder the sweep used")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default %(default)s; 0: any)")
    p.add_argument("--no-serve", action="store_true", help="write the page and print its path only")
    args = p.parse_args(argv)
    try:
        page = build_page(stored_plan(args.experiment, args.storage))
    except UsageError as err:
        return report_usage_error(err)
    print(f"listening page: {page} ({page.stat().st_size / 1e6:.1f} MB)", flush=True)
    if not args.no_serve:
        serve(page.parent, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
