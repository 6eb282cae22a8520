"""The signing side: keys, admin policy, audit log, the signing daemon and its client."""
