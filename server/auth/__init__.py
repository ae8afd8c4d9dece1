"""Authentication and authorization (etcd's server/auth): the auth store, permissions, tokens."""
