//! pgwarden.
