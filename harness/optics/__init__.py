"""The optical encoder: a 4F system with a phase SLM and a camera.

    params      OpticsConfig, CameraConfig, Imperfections, ZERNIKE_NAMES, parameter generators
    functional  pure functions (complex exponential, Zernike basis, phase wrap / quantization, blur,
                vignetting)
    fused       the autograd Functions PhaseField and CroppedIntensity, and their batch chunks
    nufft       non-uniform DFTs (kernel gridding) for the exactly evaluated SLM rotation
    pixels      camera pixels that integrate over their area (fill factor)
    sensor      Camera and its noise models (training, and the bench's per-frame Poisson)
    masks       mask initialisation (Gerchberg-Saxton edges), export for an SLM, import
    fourf       FourF, the differentiable encoder

Other packages import the public names from here; modules of this package import each other by
their full path.
"""

from harness.optics.fourf import FourF
from harness.optics.params import (
    ZERNIKE_NAMES,
    CameraConfig,
    Imperfections,
    OpticsConfig,
)
from harness.optics.sensor import Camera

__all__ = ["ZERNIKE_NAMES", "Camera", "CameraConfig", "FourF", "Imperfections", "OpticsConfig"]
