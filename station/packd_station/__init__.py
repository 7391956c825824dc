"""packd's line station: camera frames in, verdicts recorded, the PLC and the operator told. Torch-free."""

import os

# OpenCV reads its decompression-bomb limit once, at its first decode: set it before anything imports cv2
# (packd's training and export refuse the same size through Pillow's limit).
MAX_IMAGE_PIXELS = 89_478_485
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
