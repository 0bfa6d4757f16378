import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # serving_reference (shared with the subprocess driver)
