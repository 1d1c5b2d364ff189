import streamlit as st

st.title("images")
st.info("This page is being built.")
