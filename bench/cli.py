"""`sluice bench`: the benchmark from the sluice command line.

Hooked into api/cli.py with two lines (the arguments are those of `python -m bench`):

    from bench.cli import register as register_bench
    register_bench(app)
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        name="bench",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def bench(ctx: typer.Context) -> None:
        """Benchmark a 1,000,000-recipient phase day end to end (`sluice bench --help`; `sluice bench caps`)."""
        from bench.__main__ import main

        raise typer.Exit(main(list(ctx.args)))
