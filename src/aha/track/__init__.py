"""What a run leaves behind and shows while it runs: metrics.jsonl (`metrics`), sample completions
(`samples`), the terminal progress bar (`progress`) and PNG curves (`plots`)."""
