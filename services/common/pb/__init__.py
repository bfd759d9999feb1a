"""Generated protobuf code (make protos); do not edit."""
