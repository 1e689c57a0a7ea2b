//! Host integration tests across staprun and stapio live in `tests/`.
