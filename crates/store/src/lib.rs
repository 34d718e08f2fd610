//! The store: a trait over a revisioned key-value store with watch history, and its embedded redb backend.
