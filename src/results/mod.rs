//! Collecting results: the patch, artifacts, and uploading everything to the store.
