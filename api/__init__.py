"""The interfaces people use: the HTTP API and the `sluice` CLI, over one service layer."""
