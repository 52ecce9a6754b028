"""The entry points, thin: each `python -m gpt4_lightning.<command>` is `cli.<command>`, run through
`launch.launch` (schema, override pre-check, run-directory guard, one `error:` line for a user's mistake)."""
