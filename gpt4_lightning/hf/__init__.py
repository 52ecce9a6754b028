"""The Hugging Face side: `export_hf` writes a directory transformers, lm-evaluation-harness and the hub read as
it is (`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`), with the model's code beside it.

`configuration_gpt4.py` and `modeling_gpt4.py` are the two files transformers loads; they import the model from
`gpt4_lightning.model`, and the export copies them with the model's own files, that import rewritten, so the
directory needs torch and transformers but not this package.
"""
