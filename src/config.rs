//! Settings resolved once: flags > environment > defaults.
