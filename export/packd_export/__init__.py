"""packd_export: split a trained packd model into support/query graphs, export them to ONNX
(fp32, fp16, int8 Q/DQ), check them against TensorRT's ONNX parser, build TensorRT engines, and
write everything as a bundle."""
