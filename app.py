"""DMD Copying Lab — router only: pages live in pages/."""

import streamlit as st

st.set_page_config(page_title="DMD Copying Lab", page_icon=":material/science:", layout="wide")

nav = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/toy_lab.py", title="Toy Lab", icon=":material/science:"),
        st.Page("pages/experiments.py", title="Experiments", icon=":material/monitoring:"),
        st.Page("pages/images.py", title="Image models", icon=":material/image:"),
        st.Page("pages/docs.py", title="Docs", icon=":material/menu_book:"),
    ]
)
nav.run()
