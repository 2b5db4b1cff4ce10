"""What a run leaves behind and shows while it runs: metrics.jsonl (`metrics`), sample completions
(`samples`), the terminal progress bar (`progress`), PNG curves (`plots`), TensorBoard / W&B behind
`track.report_to` (`trackers`) and the offline HTML run report of `aha report` (`report`, `svg`)."""
