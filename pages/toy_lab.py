import streamlit as st

st.title("toy_lab")
st.info("This page is being built.")
