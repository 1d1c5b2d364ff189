import streamlit as st

st.title("docs")
st.info("This page is being built.")
