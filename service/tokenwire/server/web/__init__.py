"""Door 2, HTTP: OpenAI's JSON over SSE, the native contract as NDJSON, the playground."""
