"""The `adrank` command, the roof of the house: the only package that imports every role
(training, exporter, service, benchmarks, loadtest), each inside the subcommand that needs it, so
``adrank --help`` stays instant and serving never imports torch.  Nothing imports this package."""

from adrank.cli.main import main

__all__ = ["main"]
