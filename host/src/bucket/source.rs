//! Serving the plugins of a bucket: load its current set, follow its changes.
