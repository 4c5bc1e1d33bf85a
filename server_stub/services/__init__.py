"""Domain logic over storage. Services know nothing of HTTP; rules come from omnisdk.core."""
