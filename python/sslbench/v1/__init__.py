# Generated protocol buffer modules (protoc --python_out, grpc_python_plugin)
# from proto/sslbench/v1; regenerate with python/generate.sh. A test checks
# that they match the .proto files.
