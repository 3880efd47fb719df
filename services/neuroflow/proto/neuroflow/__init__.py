"""Generated protobuf code (scripts/gen_proto.py); the contract itself is in proto/."""
