//! Workers: the job pipeline, claims, retries and the embedded batch runner.
