"""packd_bench: latency, throughput, changeover, memory and accuracy benchmarks (`packd-bench`),
and the scripts that produce the documented result tables (docs/results.md, docs/fewshot.md)."""
