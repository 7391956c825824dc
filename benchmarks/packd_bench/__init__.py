"""packd_bench: latency, throughput, changeover, memory and accuracy benchmarks (`packd-bench`),
and the scripts that produce the README's result tables."""
