"""
Packaging for golb, an HTTP/S load balancer and reverse proxy built on Twisted.
"""
from setuptools import find_packages, setup

setup(
    name="golb",
    version="0.1.0",
    description="HTTP/S load balancer and reverse proxy built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=["*.test", "*.test.*"]) + ["twisted.plugins", "golb.test"],
    package_data={"golb": ["py.typed"]},
    install_requires=[
        "Twisted[tls,conch]>=25.5.0",
        "pyOpenSSL>=22.0.0",
        "service-identity>=21.1.0",
        "attrs>=22.1.0",
        "PyYAML>=6.0",
        "treq>=22.2.0",
        # metrics: the reference Prometheus client (exposition format, histograms)
        "prometheus-client>=0.17",
        # traces: the OpenTelemetry SDK and its OTLP exporters; gRPC export needs
        # grpcio, which has no PyPy wheels, so it is left out there (protocol:
        # http works everywhere)
        "opentelemetry-sdk>=1.20",
        "opentelemetry-exporter-otlp-proto-http>=1.20",
        'opentelemetry-exporter-otlp-proto-grpc>=1.20; platform_python_implementation == "CPython"',
    ],
    extras_require={
        "test": ["hypothesis>=6.0", "ruff>=0.4"],
    },
    entry_points={"console_scripts": ["golb = golb.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
    ],
)
