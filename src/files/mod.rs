//! Files pgha changes as root: the rules for doing that safely in trees other users own.

pub mod secure;
