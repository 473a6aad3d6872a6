"""The mutating admission webhook that translates HAMi GPU requests into DRA claims."""
