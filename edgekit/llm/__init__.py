"""Decoder-only language models (`--task text-generation`): load, export with a KV cache, judge, generate.

A decoder needs what a classifier does not: a KV cache of fixed length
(`--max-seq-len`), weights in 4 bits, a tokenizer shipped beside the artifact,
a generation loop, and tokens per second as its latency figure. The formats
keep their own parts (formats/executorch.py: 8da4w + XNNPACK) and this package
the parts every format shares:

- decoder.py   what to build: a Hugging Face model directory, made exportable
- quality.py   perplexity and greedy-token agreement against the float model
- generate.py  the generation loop and its timings (time to first token, tokens/s)
- build.py     the build: quantize, export, judge, time, write the build dir
"""
