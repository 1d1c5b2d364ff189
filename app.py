"""DMD Copying Lab — router only: pages live in pages/."""

import streamlit as st

st.set_page_config(page_title="DMD Copying Lab", page_icon="🧪", layout="wide")

nav = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon="🏠", default=True),
        st.Page("pages/toy_lab.py", title="Toy Lab", icon="🧪"),
        st.Page("pages/experiments.py", title="Experiments", icon="📈"),
        st.Page("pages/images.py", title="Image models", icon="🖼️"),
        st.Page("pages/docs.py", title="Docs", icon="📖"),
    ]
)
nav.run()
