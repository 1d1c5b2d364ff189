"""dmdcore: the research engine behind DMD Copying Lab.

No Streamlit, no Plotly: usable from a notebook, the CLI, a test or the app alike.
"""

__version__ = "0.1.0"
