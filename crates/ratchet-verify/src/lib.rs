//! Verifying ratchet's access tokens locally (work in progress, issue 8).
