"""The local cloud: runs template.yaml on this machine with no Docker and no AWS account."""
