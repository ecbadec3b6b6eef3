"""Official dataset layouts the phantom writes: one module per format."""

from cxrbench.phantom.formats.base import PhantomFormat
from cxrbench.phantom.formats.chexpert import CheXpert
from cxrbench.phantom.formats.custom import CsvFormat
from cxrbench.phantom.formats.google import NIHGoogle
from cxrbench.phantom.formats.mimic import MIMIC
from cxrbench.phantom.formats.nih import NIH
from cxrbench.phantom.formats.padchest import PadChest
from cxrbench.phantom.formats.pcxr import VinDrPCXR
from cxrbench.phantom.formats.rsna import RSNA
from cxrbench.phantom.formats.siim import SIIM
from cxrbench.phantom.formats.vindr import VinDr

FORMATS: dict[str, type[PhantomFormat]] = {
    cls.name: cls
    for cls in (NIH, CheXpert, MIMIC, PadChest, VinDr, VinDrPCXR, RSNA, SIIM, NIHGoogle, CsvFormat)
}

__all__ = ["FORMATS", "PhantomFormat"]
